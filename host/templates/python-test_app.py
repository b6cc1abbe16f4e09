"""Runs with plain Python (`python3 test_app.py`): the plugin's logic without a host."""

import sys
import types
import unittest

# The bindings exist only inside the component: stand-ins let the logic load here.
for module in ("wit_world", "wit_world.exports", "wit_world.imports",
               "wit_world.imports.log", "wit_world.imports.types"):
    sys.modules.setdefault(module, types.ModuleType(module))
sys.modules["wit_world.exports"].Handler = object
sys.modules["wit_world"].exports = sys.modules["wit_world.exports"]
sys.modules["wit_world.imports"].log = sys.modules["wit_world.imports.log"]
sys.modules["wit_world.imports.types"].Request = object
sys.modules["wit_world.imports.types"].Response = object

import app  # noqa: E402


class GreetingTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(app.greeting("ana"), {"message": "Hello, ana!"})


if __name__ == "__main__":
    unittest.main()
