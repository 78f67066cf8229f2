"""A bare Flower app of the usual shape: digits, an MLP, Opacus DP-SGD, FedAvg."""
