{
  "targets": [
    {
      "target_name": "ambient_redirect",
      "sources": ["native/redirect.c"],
      "defines": ["NAPI_VERSION=9", "_GNU_SOURCE"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2", "-fvisibility=hidden"],
      "cflags_c": ["-std=gnu11"],
      "ldflags": ["-Wl,-z,now", "-Wl,-z,relro"],
      "libraries": ["-ldl", "-lpthread"]
    }
  ]
}
