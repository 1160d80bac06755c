"""A Binance USDⓈ-M market-data stand-in over real sockets, for tests, benchmarks and the demo (docs/emulator.md).

See docs/emulator.md for the protocol it speaks, the scenario format, faults and the control API.
"""

from collector.emulator.market import Market
from collector.emulator.scenarios import ScenarioError, load_file
from collector.emulator.server import EmulatorServer

__all__ = ["EmulatorServer", "Market", "ScenarioError", "load_file"]
