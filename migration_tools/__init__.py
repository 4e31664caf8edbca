"""Migration toolkit: legacy inventory import, device identity, SCEP-to-EST mapping, reports."""
