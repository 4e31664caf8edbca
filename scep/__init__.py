"""SCEP (RFC 8894): wire format, challenge validators, service and views."""
