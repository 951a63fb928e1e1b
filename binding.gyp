{
  "targets": [
    {
      "target_name": "tlsd-spawn-helper",
      "conditions": [
        [
          "OS=='linux'",
          {
            "type": "executable",
            "sources": ["src/launch/spawn-helper.c"],
            "cflags": ["-O2", "-Wall", "-Wextra"],
            "ldflags": ["-Wl,-z,now"]
          },
          { "type": "none" }
        ]
      ]
    }
  ]
}
