"""Protocol drivers: each turns one protocol's traffic into samples and canonical writes into traffic."""
