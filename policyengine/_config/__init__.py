"""Policy files to validated data: models, units, matchers, the loader, diagnostics."""
