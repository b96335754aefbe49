# dbpool_proto_library(NAME PROTOS files... IMPORT_DIRS dirs... [GRPC files...])
# Runs protoc (and the gRPC plugin for the GRPC files) into
# ${CMAKE_BINARY_DIR}/gen and builds the result as a static library.
# An explicit custom command keeps the output paths predictable.
set(DBPOOL_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${DBPOOL_GEN_DIR})

function(dbpool_proto_library name)
  cmake_parse_arguments(ARG "" "" "PROTOS;GRPC;IMPORT_DIRS" ${ARGN})
  set(srcs)
  set(include_flags)
  foreach(dir IN LISTS ARG_IMPORT_DIRS)
    list(APPEND include_flags -I${dir})
  endforeach()
  foreach(proto IN LISTS ARG_PROTOS)
    set(found "")
    foreach(dir IN LISTS ARG_IMPORT_DIRS)
      if(NOT found AND EXISTS ${dir}/${proto})
        set(found ${dir}/${proto})
      endif()
    endforeach()
    if(NOT found)
      message(FATAL_ERROR "proto ${proto} not found in ${ARG_IMPORT_DIRS}")
    endif()
    string(REGEX REPLACE "\\.proto$" "" base ${proto})
    set(outs ${DBPOOL_GEN_DIR}/${base}.pb.cc ${DBPOOL_GEN_DIR}/${base}.pb.h)
    set(grpc_flags)
    if(proto IN_LIST ARG_GRPC)
      list(APPEND outs ${DBPOOL_GEN_DIR}/${base}.grpc.pb.cc
                       ${DBPOOL_GEN_DIR}/${base}.grpc.pb.h)
      set(grpc_flags --grpc_out=${DBPOOL_GEN_DIR}
          --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>)
    endif()
    add_custom_command(
      OUTPUT ${outs}
      COMMAND protobuf::protoc ${include_flags} --cpp_out=${DBPOOL_GEN_DIR}
              ${grpc_flags} ${proto}
      DEPENDS ${found} protobuf::protoc gRPC::grpc_cpp_plugin
      COMMENT "protoc ${proto}")
    list(APPEND srcs ${outs})
  endforeach()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} SYSTEM PUBLIC ${DBPOOL_GEN_DIR})
  target_link_libraries(${name} PUBLIC protobuf::libprotobuf gRPC::grpc++)
  target_compile_options(${name} PRIVATE -w)
endfunction()
