"""The Starlette application, its HTTP routes and middleware, and the CLI."""
