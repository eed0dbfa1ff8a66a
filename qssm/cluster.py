"""Ray for the length of a block: the executor ``qssm sweep`` and ``qssm map-to-hw`` share."""

import contextlib


@contextlib.contextmanager
def ray_session(address: str | None, error: type[Exception] = RuntimeError):
    """Yields the ``ray`` module, started for the block (a local Ray, or the cluster at
    ``address``) and shut down after it unless it was running already; ``error`` is raised,
    naming the install, where Ray is not installed."""
    try:
        import ray  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise error("the Ray executor needs Ray: pip install 'qssm[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
