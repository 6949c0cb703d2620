import logging
import sys

FORMAT = "%(asctime)s [%(name)s] %(levelname)s - %(message)s"


def configure_logging(debug: bool = False) -> None:
    """Log modelyard's messages like MLServer's own, without doubling MLServer's lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger("modelyard")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.INFO)
