"""The command line (`policyengine ...`): validate, schema, explain, init and the rest."""
