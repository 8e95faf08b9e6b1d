"""The running control plane: the pipeline (source → IR → translate → verify → snapshot),
the file watcher, and the service that runs them with the ADS server and the policy service.

This is the only package that sees every layer; the layers themselves never import it.
"""
