"""Storage: schema, engine set-up, migrations and the repositories. All SQL of the CA lives here."""
