"""Who may call, and what nobody may forge: bearer tokens and API keys with their scopes
(auth.py, api_keys.py, `flask keys new` in keys_cli.py), keyed hashes and signatures under
SECRET_KEY (keyed.py), and what browsers are told (CORS, security headers: headers.py)."""
