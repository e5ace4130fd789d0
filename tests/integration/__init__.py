"""Integration tests: the API, the jobs and the command line against their dependencies: moto
(in process or as a server), local HTTP servers, `smartgrid serve` subprocesses."""
