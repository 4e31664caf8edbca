"""The fuzzing harness (issue 11, part 5 "No 500 on any input").

Drives the real Flask application (`gateway.app.create_app` over a real data directory) through
`app.test_client()` with mutated SCEP, EST, OCSP and admin-API requests. Inputs start from real
captured messages (tests/vectors/) and from valid messages built here, and are mutated at every
layer: raw bytes, the base64/URL layer and, above all, the inner structures (CSR, signer
certificate, signed attributes, envelope) re-signed and re-enveloped so that a mutated CSR reaches
the services' policy and event code.

Used by tests/test_fuzz.py (hypothesis, bounded, derandomized), tests/test_fuzz_corpus.py (the
regression corpus in tests/vectors/fuzz/) and bench/fuzz (long runs).
"""
