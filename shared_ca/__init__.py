"""The shared certificate authority: issuance, revocation, CRL, OCSP, profiles, keys and storage.

This package imports nothing else of ours and no web framework; both protocols stand on it.
"""
