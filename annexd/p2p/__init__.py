"""P2P-address front-end: tokens, listeners, tor onion services."""
