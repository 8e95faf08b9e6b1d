"""The running control plane: the pipeline (source → IR → translate → verify → snapshot),
the file watcher, and the service that runs them with the ADS server and the policy service.
Endpoints set at run time (runtime_endpoints.py: the endpoints file and API, endpoints_api.py)
are put into the IR by the pipeline, like any edit.

This is the only package that sees every layer; the layers themselves never import it.
"""
