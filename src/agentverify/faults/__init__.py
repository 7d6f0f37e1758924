"""Network faults: a Toxiproxy-API fault proxy built in, and a typed client for any such server.

    server.py   ``python -m agentverify.faults.server``: a drop-in ``toxiproxy-server``
                (Toxiproxy 2.12.0's HTTP API and toxics) in asyncio, used when no real
                toxiproxy-server binary or image is present
    client.py   :class:`~agentverify.faults.client.ToxiproxyClient`, ``Proxy``, ``Toxic``:
                our own client over httpx (no class-level state; errors become
                :class:`~agentverify.errors.FaultInjectionError`)
    api.py, proxy.py, toxics.py, _addr.py, _gojson.py, _metrics.py
                the server's parts: HTTP API, proxying and links, toxic behaviours,
                Go-compatible addresses and JSON, ``/metrics``

The stack's ``toxiproxy`` service and the fault steps that use it are wired elsewhere.
Importing this package (or the client) does not import the server.
"""
