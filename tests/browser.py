"""A real headless Chromium driven over the DevTools protocol, for the browser tests.

`Browser` starts Debian's `chromium` (scripts/ensure-tools.sh installs it) with its own
profile in a temp folder, and talks to one page over the protocol's websocket (aiohttp's
client: aiohttp comes with textual-serve). The textual-serve page draws its terminal
(xterm.js) on a canvas, so the text is not in the DOM: `TERMINAL_HOOK`, run before the
page's scripts, keeps the page's xterm Terminal object, and `terminal_text()` reads the
rows xterm.js rendered from its buffer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

# The textual-serve page does `this.terminal = new Terminal(...)` on its own object: a
# setter on Object.prototype sees that first assignment, keeps the Terminal in
# window.__vmshTerminal and makes the property a plain own one again.
TERMINAL_HOOK = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  get() { return undefined; },
  set(value) {
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer && value.buffer.active) { window.__vmshTerminal = value; }
  },
});
"""

TERMINAL_TEXT = """(() => {
  const t = window.__vmshTerminal;
  if (!t) { return ""; }
  const b = t.buffer.active, rows = [];
  for (let i = 0; i < t.rows; i++) {
    const line = b.getLine(b.viewportY + i);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
})()"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium process and its first page."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 800) -> None:
        exe = chromium()
        assert exe is not None
        self.profile = profile
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Debian's chromium is a wrapper script: end the whole group
        )
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._next = 0

    def _port(self, timeout: float = 30.0) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if active.exists() and (lines := active.read_text().splitlines()):
                return int(lines[0])
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise AssertionError("chromium never wrote DevToolsActivePort")

    async def open(self) -> None:
        port = self._port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        # A headless window never has the focus: the page would tell the app it is blurred
        # (Textual then leaves its footer empty). Act as the focused window of a desktop.
        await self.call("Emulation.setFocusEmulationEnabled", enabled=True)
        await self.call("Page.addScriptToEvaluateOnNewDocument", source=TERMINAL_HOOK)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._next += 1
        ident = self._next
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads((await self._ws.receive(timeout=30)).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def terminal_text(self) -> str:
        return str(await self.evaluate(TERMINAL_TEXT) or "")

    async def page_text(self) -> str:
        return str(await self.evaluate("document.body ? document.body.innerText : ''") or "")

    async def until_terminal_shows(self, *texts: str, timeout: float = 30.0) -> str:
        """Poll the rendered terminal until every text is on it; returns the screen."""
        return await self._until(self.terminal_text, texts, "terminal", timeout)

    async def until_page_shows(self, *texts: str, timeout: float = 30.0) -> str:
        """Poll the page's text (the DOM's) until every text is in it; returns it."""
        return await self._until(self.page_text, texts, "page", timeout)

    async def _until(self, read: Callable[[], Awaitable[str]], texts: tuple[str, ...], what: str,
                     timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = await read()
            if all(text in seen for text in texts):
                return seen
            await asyncio.sleep(0.1)
        raise AssertionError(f"the browser's {what} never showed {texts}; it shows:\n{seen}")

    async def focus_terminal(self) -> None:
        """Focus the terminal, as the operator's first click on it does (the page tells the
        app; Textual fills its footer once the app has the focus)."""
        await self.evaluate("window.__vmshTerminal && window.__vmshTerminal.focus()")

    async def press(self, key: str, text: str) -> None:
        """A key press as the operator's keyboard sends it (keyDown with its text, keyUp),
        to the terminal (focused first, as a click on it would)."""
        await self.focus_terminal()
        await self.call("Input.dispatchKeyEvent", type="keyDown", key=key, text=text)
        await self.call("Input.dispatchKeyEvent", type="keyUp", key=key)

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(data)
        return data

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
