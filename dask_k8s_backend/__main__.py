"""``python -m dask_k8s_backend``: the command line in :mod:`dask_k8s_backend.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
