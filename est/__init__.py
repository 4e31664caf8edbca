"""EST (RFC 7030, RFC 8951): wire format, authentication, service and views (issue 4)."""
