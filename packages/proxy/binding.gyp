{
  "targets": [
    {
      "target_name": "ambient_hbone",
      "sources": [
        "native/addon.c",
        "native/events.c",
        "native/h2.c",
        "native/io.c",
        "native/js.c",
        "native/pipe.c",
        "native/queue.c",
        "native/session.c",
        "native/tls.c",
        "native/worker.c"
      ],
      "defines": ["NAPI_VERSION=9", "_GNU_SOURCE"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2", "-fvisibility=hidden"],
      "cflags_c": ["-std=gnu11"],
      "ldflags": ["-Wl,-z,now", "-Wl,-z,relro"],
      "libraries": ["-ldl", "-lpthread"]
    }
  ]
}
