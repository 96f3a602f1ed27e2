"""rosbag2 tools without a ROS install (rosbags): reading and writing bags (``io``), replaying
one through the model and scoring it (``eval``), the HTML/PNG report (``report``) and their
``eacnet`` commands (``cli``)."""
