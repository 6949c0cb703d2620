"""The servers modelyard is measured against in `make bench`, one module of settings per
peer (mlserver, kserve, bentoml, ray, constant), each a `Peer`: how to install it, how to
start it on the benchmark's model files, when it is ready, how to stop it."""
