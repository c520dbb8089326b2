"""Blossom: run large language models together over a swarm of volunteer servers."""
