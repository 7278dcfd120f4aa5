"""The server's routes, one router per family, each reading the server's state from the request's app
(`serve.state.server_state`): `ops` (health, metrics), `openai_api` (the OpenAI-compatible /v1 routes),
`llmkit_api` (classify, explain, feedback). `serve.app.create_app` assembles them."""
