-- A method table: GET answers JSON, POST echoes the form; other methods get 405.
return {
  get = function()
    return { greeting = "hello", time = os.time(), path = request.path }
  end,
  post = function()
    return 201, { received = request.form or {} }
  end,
}
