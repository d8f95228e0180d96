"""Helpers shared by several test modules (test modules never import each other).

- :mod:`tests.support.messages`: reading published messages and metric samples.
- :mod:`tests.support.sources`: short source timings, ``check-config`` runs, odd media files,
  a failing HTTP server.
- :mod:`tests.support.secrets`: the special characters credentials are tested with.
- :mod:`tests.support.deploy`: the shipped Grafana dashboard's queries.
- :mod:`tests.support.prometheus`: a real Prometheus started on loopback and its HTTP API.

The daemon-process harness is :mod:`tests.harness`; the servers are tests/rtsp_server.py,
tests/rtsp_fixtures.py and tests/mjpeg_server.py.
"""
