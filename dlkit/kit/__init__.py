"""The kit's tooling around the service: the embedded stack and the `dlkit` command (up, status, down,
demo, audit), the timeout model of the proxy chain, and the local chain's rendering.

Installed with the `kit` extra (`pip install -e '.[kit]'`, which `make` does); the API and the
workers never import it, and their image does not carry its dependencies (Locust, matplotlib, the
nginx and HCL parsers, mirakuru, rich).

It works on a checkout: the configs it reads and renders (proxy/, infra/, loadtests/, app/) live
beside the package, in ROOT.
"""

from pathlib import Path

# The checkout holding app/, worker/, proxy/, infra/ and loadtests/: what the tooling reads and runs.
ROOT = Path(__file__).resolve().parents[2]
