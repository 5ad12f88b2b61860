"""A Flower app whose FedAvg rounds run through privagg's secure aggregation."""
