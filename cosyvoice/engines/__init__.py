"""The engines behind the Engine protocol (base.py): lite and cosyvoice3, and the registry that picks one."""
