"""Serving the generator over HTTP in the cloud-prediction JSON format (Google Cloud ML `predict`, KServe V1).

- registry.py: which model files to serve: a path, a registry version (`generator@v0.1.0`) or a stage
  (`--stage prod`), resolved through DVC's artifact registry and remote like `dvc artifacts get`, and the
  encoder registered with that generator (the `encoder` artifact of the same commit).
- batching.py: concurrent requests gathered into one generator or encoder call.
- app.py: the FastAPI app: predict, model metadata, health, sample grids, the page.
- page.html: the page at `/`.
- __main__.py: `python -m dcgan.serve` (`make serve`), uvicorn on 127.0.0.1 by default.
"""
