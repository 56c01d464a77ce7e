"""VaultMesh Scheduler core: everything needed to run headless."""
__version__ = "0.1.0"
