from imgaudit.cli.main import app

app(prog_name="imgaudit")
