"""Subcommands of `tuneforge` that sit above the layers they drive: `data validate` (data + models) and the service's
`server`, `worker` and `keys` (api + jobs). cli.py registers them; see docs/ARCHITECTURE.md for the layers."""
