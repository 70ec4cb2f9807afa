"""The project's own local Coinbase exchange: both level-2 WebSocket protocols on 127.0.0.1.

Read in this order:

* ``server.py``: :class:`LocalExchange`, its lifecycle, ground truth and fault API;
* ``config.py``: :class:`ExchangeConfig`, every option, validated once;
* ``protocol.py``: the interface of a wire dialect; ``exchange_protocol.py`` and
  ``advanced_trade_protocol.py`` implement it (requests, encoders, error shapes);
* ``connections.py``: connections, send queues, subscriptions, counters;
* ``loops.py``: the market and heartbeat clocks;
* ``market.py``: the simulated market and its true book (pure: no sockets, no clocks);
* ``rest.py``: Coinbase's two REST book endpoints on the same port (plain HTTP), the
  REST errors and the request log;
* ``faults.py``, ``replay.py``, ``auth.py``: fault catalogue, serving a recording, the
  server's own level2 signature check;
* ``cli.py`` (``python -m local_exchange``) and ``embedded.py`` (the in-process exchange
  of ``ORDERBOOK_FEED=sim``).
"""
