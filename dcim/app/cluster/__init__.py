"""High availability and scale-out: several `dcim run` nodes for one site, coordinated through etcd.

    ../cluster_config.py   the `cluster:` section (off by default: a single node with no engine behaves as
                before); beside this package, so that the configuration does not import it
    shards.py   the site's devices in groups (a rack's PDUs, its CDU loop), rendezvous-hashed over live nodes
    engine.py   etcd through the `aetcd` client: endpoint failover, timeouts, one lease per session
    node.py     membership, shard claims, the leader election, the shared alarm state, the write fence
    cli.py      `dcim cluster status`

Nothing here decides who is alive or who leads: etcd's leases, compare-and-create transactions and watches
do. The modules that need the etcd client (engine, node) are imported only when `cluster:` is configured,
so the client library stays an optional extra (`dcim[cluster]`).
"""
