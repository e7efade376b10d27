# Runs first on every boot. Deliberately tiny and never imports the app: whatever is broken
# in the app, the board still boots to a usable REPL.
import gc

gc.collect()
