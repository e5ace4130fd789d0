"""What the tests share besides fixtures (those are in the conftest.py files), by topic:

- ``paths``: the repository's root, the data slices in tests/data, the example request.
- ``env``: the environment the tests run in (fake AWS credentials, two users' API keys).
- ``series``: CSV files from rows or series, finer grids from hourly series.
- ``bodies``: request bodies: another forecast of the same shape.
- ``apigw``: real-shaped API Gateway events and a client that calls a Lambda handler with them.
- ``emf``: reading Powertools' EMF lines.
- ``stack``: the local stack on moto as the fixtures provision it; the API service's reset.
- ``ingestion``: meter files uploaded and the EventBridge events S3 sends for them.
- ``faults``: AWS faults injected at the transport; a moto server with slow requests.
- ``serve``: ``smartgrid serve`` in a subprocess and real HTTP calls to it.
- ``uv_tools``: running uv (other projects' locks and tools).
"""
