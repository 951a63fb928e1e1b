{
  "targets": [
    {
      "target_name": "tlsd-spawn-helper",
      "type": "executable",
      "sources": ["src/native/spawn-helper.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "ldflags": ["-Wl,-z,now"]
    }
  ]
}
