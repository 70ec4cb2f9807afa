"""The bottom layer: helpers every other package may import, and which import nothing of
the project but each other.

Read in this order:

* ``domain.py``: what a product id, a price and a size may be, checked where a value
  enters;
* ``decimals.py``: the one decimal context and the one text form of a price or size;
* ``text.py``: text from a feed, a file or a user made safe to log or show (escaped,
  truncated), and secrets taken out of URLs and client settings;
* ``logs.py``: logging that cannot flood;
* ``slots.py``: frozen dataclasses filled through their slots, for the hot paths;
* ``validation.py``: the one set of checks for settings, constructors and command lines
  (one-line :class:`~common.validation.ConfigError` naming the setting).
"""
