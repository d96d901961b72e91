"""Pipeline definitions (KFP). Each `<name>.py` sits beside `<name>.yaml`, what it compiles to."""
