from uplink import app

app.run()
