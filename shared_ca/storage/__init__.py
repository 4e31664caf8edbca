"""Storage: schema, engine set-up, migrations and the repository. All SQL of the CA lives here."""
