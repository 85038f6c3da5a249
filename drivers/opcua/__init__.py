"""OPC UA driver (asyncua)."""
