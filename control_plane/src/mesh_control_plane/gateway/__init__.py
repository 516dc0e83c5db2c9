"""Envoy gateways: the agent that runs one (identity, SDS, Envoy) and its bootstrap."""
