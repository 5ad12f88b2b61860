"""Run the app on Flower's simulation engine (Ray backend), 5 virtual SuperNodes, 3 rounds.

python examples/flower_app/run_simulation.py
"""

import sys
from pathlib import Path

from flwr.simulation import run_simulation

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flower_app.client_app import app as client_app
from flower_app.server_app import app as server_app

if __name__ == "__main__":
    run_simulation(
        server_app,
        client_app,
        num_supernodes=5,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
