"""Layer 6: the `phasegate` command, also a kubectl plugin (`kubectl phasegate ...`).

Modules: `main` (the typer app), `kube` (cluster access, who-am-i), `model` (reading a
TradingStrategy object into the api models), `render` (pure renderers: object dict ->
rich renderable), `actions` (manual requests: refuse, write, wait) and `crds`
(install-crds).
"""
