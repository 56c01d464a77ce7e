"""The command-line entry points of `vmsh-scheduler` (pyproject's script: cli.main:main).

main.py reads the arguments and starts one of: the dashboard (tui/), the headless run
(headless.py), check-config (check.py), verify (verify.py), ctl (ctl.py, a running
scheduler's control socket), attach (the dashboard on that socket), store/export
(store.py). parser.py builds the argument parser, common.py holds what they share.
core/ never imports this package; only this package and tui/ import both.
"""
