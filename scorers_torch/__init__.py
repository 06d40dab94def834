"""PyTorch side of BalancedDPO: scorers, votes, preprocessing, evaluation."""
